"""Shared parts of fastconv's benchmarks, one module per role:

cases     the layer catalogue (suites, custom shapes) and random inputs per op
impls     the implementations compared: the vendor path (oneDNN/ATen or cuDNN) and fastconv
timing    interleaved median timing, measured ceilings, machine and build facts, progress bars
report    text / markdown tables of a report
plot      the PNG bar chart of speedups (needs matplotlib)
roofline  paper GPU bounds of the cases
"""
