"""idle-reaper: power off a development machine once nobody has used it over SSH for a while.

Kept empty on purpose: the PAM hook imports submodules of this package on the login path.
"""

__version__ = "0.1.0"
