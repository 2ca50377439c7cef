"""``l2bn bench``: time L2BN against native BatchNorm and the naive composite.

One process, contenders interleaved round by round, so that machine noise hits all of
them alike and ratios taken in one run are meaningful. Modules: ``contenders`` (what is
timed), ``timing`` (interleaved rounds), ``saved`` (bytes saved for backward), ``e2e``
(one SGD step of the CIFAR ResNet-20), ``report`` (table and JSON), ``command`` (CLI).
"""
