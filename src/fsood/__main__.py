import sys

from fsood.cli import main

sys.exit(main())
