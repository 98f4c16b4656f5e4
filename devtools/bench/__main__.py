import sys

from devtools.bench import main

sys.exit(main())
