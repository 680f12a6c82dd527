"""Small shared helpers: paths, configs, seeding, devices, atomic writes, manifests, logging."""

from . import quiet as _quiet

_quiet.install()  # before any stage imports peft (and with it bitsandbytes): see quiet.py
