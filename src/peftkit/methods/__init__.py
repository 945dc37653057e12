"""Built-in adapter methods. Importing a method module registers it (see :mod:`peftkit.registry`)."""

from . import lora  # noqa: F401
from . import bottleneck  # noqa: F401
from . import bitfit  # noqa: F401
from . import ln_tuning  # noqa: F401
from . import ia3  # noqa: F401
from . import loha  # noqa: F401
from . import lokr  # noqa: F401
from . import vera  # noqa: F401
from . import adalora  # noqa: F401
from . import p_tuning, prefix_tuning, prompt_tuning  # noqa: F401
