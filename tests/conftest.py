import os
import warnings

# Runtime shape/type checks of the theory and analysis modules: every function annotated with
# jaxtyping shapes is checked by beartype while the tests run. Installed before anything imports them.
from jaxtyping import install_import_hook

install_import_hook(["sslens.theory", "sslens.analyses", "sslens.metrics"], "sslens_typecheck.typechecker")

import pytest  # noqa: E402
import torch  # noqa: E402

warnings.filterwarnings("ignore", category=DeprecationWarning)
# the shared WikiText-2 copy beside the checkout, when present, given to sslens the only way it looks: the env var
_WIKITEXT = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "shared", "data",
                         "wikitext-2")
if "SSLENS_WIKITEXT_DIR" not in os.environ and os.path.isfile(os.path.join(_WIKITEXT, "valid.txt")):
    os.environ["SSLENS_WIKITEXT_DIR"] = _WIKITEXT
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(1234)

