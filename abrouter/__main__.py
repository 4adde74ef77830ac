import sys

from abrouter.cli import main

sys.exit(main())
