import sys

from ssgan.cli import main

sys.exit(main())
