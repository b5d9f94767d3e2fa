"""The maths: layers, losses, the MLP, optimizers, schedules and gradient checks.

Pure functions over pytrees, nothing else: no files, no network, no printing. This
package imports nothing from the rest of svhn_jax except the error types.

    layers      the registry LAYERS: Dense, activations, BatchNorm, dropout, each
                init / forward / hand-derived backward and what the checks need
    losses      softmax cross-entropy and the L2 penalty with hand-derived gradients
    model       an MLP from those layers: forward, hand backward, autodiff twin
    optim       SGD, Momentum/Nesterov, RMSprop, Adam as (init, update) pairs
    schedules   learning-rate schedules
    gradcheck   hand VJP vs jax.grad vs finite differences, per layer and model
    finitediff  extrapolated central differences that estimate their own error
    treecheck   tree structure and leaf shapes compared before any number
    stepcheck   the check inside the compiled training step
    distcheck   gradcheck for the data-parallel (sharded) backward
"""
