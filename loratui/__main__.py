from loratui.cli import main
from loratui.process_exit import exit_process

exit_process(main())
