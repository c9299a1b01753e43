import sys

from tensorframe.cli import main

sys.exit(main())
