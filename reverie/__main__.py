import sys

from reverie.cli import main

sys.exit(main())
