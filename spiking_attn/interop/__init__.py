"""Moving models in and out of the library: NIR export and import (``spiking_attn.interop.nir``)."""
