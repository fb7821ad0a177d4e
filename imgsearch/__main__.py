import sys

from imgsearch.cli import main

sys.exit(main())
