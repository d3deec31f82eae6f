"""Settings every test process needs before torch is imported.

``MKL_CBWR=AUTO,STRICT``: MKL's GEMM may round differently depending on the
memory alignment of its operands (seen on an AMD EPYC with AVX-512: the same
``F.linear`` on equal [3, 10] inputs gave different bits on every other call),
so an eager framework run and a compiled run of the same layer could differ
for no reason of snncc's. MKL's strict conditional numerical reproducibility
mode makes each result independent of alignment; the bit-for-bit equivalence
tests need that. The ``snncc`` command line sets the same default.
"""

import os

os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")
