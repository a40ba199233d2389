"""``python -m sagan_attn``: the demo (see demo.py); ``--info`` prints the build info."""
import sys

from .demo import main

sys.exit(main())
