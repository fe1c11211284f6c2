"""The runtime type checker the tests install on sslens.theory and sslens.analyses (tests/conftest.py).

beartype with PEP 484's implicit numeric tower, so a float is an acceptable ``numpy.typing.ArrayLike``
(numpy 2 lists ``complex`` but not ``float``/``int`` in that union).
"""

from beartype import BeartypeConf, beartype

typechecker = beartype(conf=BeartypeConf(is_pep484_tower=True))
