import sys

from ninep.helper.main import main

sys.exit(main())
