"""Test configuration: float64 available, strict dtype promotion (no silent up-casts in the
library), and 8 fake CPU devices for pmap/shard_map tests. Must run before JAX's backend
initialises, which is why it lives at import time of the conftest."""

import os
import sys

import jax

jax.config.update("jax_num_cpu_devices", 8)
jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_dtype_promotion", "strict")

sys.path.insert(0, os.path.dirname(__file__))  # `import cells` from the tests
