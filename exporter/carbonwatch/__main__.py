import sys

from carbonwatch.cli import main

sys.exit(main())
