import sys

from loratui.cli import main

sys.exit(main())
