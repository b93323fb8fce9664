"""``python -m budgetllm.server serve ...``: the same command as ``budgetllm serve``."""

import sys

from budgetllm.server.cli import main

sys.exit(main())
