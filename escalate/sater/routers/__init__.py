"""SATER's routers, registered by name in escalate.routers.ROUTERS (one line each there).

The registry imports these modules, and they import its base (escalate.routers.base), which runs the
registry first; importing the registry here, before any of them, makes that order hold whichever module
a caller imports first.
"""

import escalate.routers  # noqa: F401
