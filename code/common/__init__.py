"""Small shared helpers: paths, configs, seeding, devices, atomic writes, manifests, logging."""
