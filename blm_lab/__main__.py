"""python -m blm_lab: the blm-lab command."""
import sys

from .cli import main

sys.exit(main())
