"""Regenerate loratui/data/builtin/tiny-chat-mojibake.jsonl from tiny-chat.jsonl (deterministic; run by hand).

The nonfinite-data scenario's data: the bundled chat rows, where one row in
sixteen went through the classic encoding accident of scraped and exported
text: a user typed a typographic apostrophe ("What’s"), the text was stored
as UTF-8 and later read back as Windows-1252, so it arrives as "Whatâ€™s".
The damage is in user turns only (no loss on them), as it is when questions
are pasted from other tools; the answers stay clean.
"""

import json
from pathlib import Path

BUILTIN = Path(__file__).resolve().parent.parent / "loratui" / "data" / "builtin"
EVERY = 16


def mojibake(text: str) -> str:
    return text.replace("What is", "What’s").encode("utf-8").decode("cp1252")


def main() -> None:
    rows = (BUILTIN / "tiny-chat.jsonl").read_text(encoding="utf-8").splitlines()
    out = []
    for index, line in enumerate(rows):
        row = json.loads(line)
        if index % EVERY == EVERY // 2 and any("What is" in m["content"] for m in row["messages"]
                                               if m["role"] == "user"):
            for message in row["messages"]:
                if message["role"] == "user":
                    message["content"] = mojibake(message["content"])
        out.append(json.dumps(row, ensure_ascii=False))
    (BUILTIN / "tiny-chat-mojibake.jsonl").write_text("\n".join(out) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
