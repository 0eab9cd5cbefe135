"""The DARTS convolutional space (the paper's CIFAR and ImageNet cells): ``ops`` (the primitives), ``genotype``
(the cell encoding, published cells, derivation, JSON and NNI-dict I/O), ``supernet`` (the search network with its
alphas), ``model`` (NetworkCIFAR and NetworkImageNet), ``projection`` (DARTS-PT's selection) and ``sweep`` (its
Space object). Its jobs are the shared search.py and train.py, whose tasks the other image spaces subclass.
"""
