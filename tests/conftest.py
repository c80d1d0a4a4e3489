import os
from pathlib import Path

os.environ.setdefault("WORKBENCH_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")
# The suite's caches (the demo zoo the zoo_built fixture builds) go to the checkout's ignored data/cache, not the
# user's cache directory: a run on a fresh clone (CI) builds its own zoo and leaves nothing outside the clone, and
# report kernels started by papermill inherit the variable. An explicit WORKBENCH_CACHE or WORKBENCH_DATA wins.
if not os.environ.get("WORKBENCH_CACHE") and not os.environ.get("WORKBENCH_DATA"):
    os.environ["WORKBENCH_CACHE"] = str(Path(__file__).resolve().parents[1] / "data" / "cache")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _no_function_mode_left(request):
    """A torch function mode a test leaves active (an interrupted attention capture) would intercept every later
    test's torch calls: drop it, and say which test left it (a warning in the summary)."""
    import warnings

    yield
    n = torch._C._len_torch_function_stack()
    if n:
        modes = [type(torch._C._get_function_stack_at(i)).__name__ for i in range(n)]
        while torch._C._len_torch_function_stack():
            torch._C._pop_torch_function_stack()
        warnings.warn(f"{request.node.nodeid} left torch function modes active: {modes}", RuntimeWarning, stacklevel=1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def zoo_built():
    import workbench.zoo as zoo

    zoo.build(progress=False)
    return zoo
