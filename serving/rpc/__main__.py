import sys

from serving.rpc.server import main

sys.exit(main())
