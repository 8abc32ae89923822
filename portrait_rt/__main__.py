import sys

from portrait_rt.cli import main

sys.exit(main())
