import sys

from serving.oip.server import main

sys.exit(main())
