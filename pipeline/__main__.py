"""`python -m pipeline ...`: see pipeline.cli."""
import os
import sys

from pipeline.cli import main
from pipeline.core.errors import EXIT_BROKEN_PIPE
from pipeline.core.signals import forget_handled_interrupt

try:
    code = main()
    sys.stdout.flush()
except BrokenPipeError:  # the reader went away (`... | head`): nothing more to say, and no traceback
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit's own flush is quiet too
    code = EXIT_BROKEN_PIPE
forget_handled_interrupt()  # main returned: any Ctrl-C was handled, and the exit code is main's, not SIGINT's
sys.exit(code)
