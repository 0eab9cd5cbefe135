"""Search spaces, one unit each: a space's networks, genotype type (read, write, derive, draw) and, where it has one,
its benchmark live together in one subpackage here.

``nb201`` (NAS-Bench-201) is the first unit; the DARTS convolutional and recurrent spaces still live in the shared
modules (supernet.py, model.py, genotype.py, rnn.py) until they move here, with one table of the spaces.
"""
