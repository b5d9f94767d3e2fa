"""svhn_jax: a purely functional MLP for SVHN whose backward passes are derived by hand.

Modules, in the direction data flows:
    errors    user-facing error types and exit codes
    layers    Dense, ReLU, BatchNorm: init / forward / hand-derived backward
    losses    softmax cross-entropy and L2 penalty with hand-derived gradients
    model     an MLP from those layers: forward, hand backward, autodiff reference
    optim     SGD, Momentum/Nesterov, RMSprop, Adam as (init, update) pairs; schedules
    gradcheck hand VJP vs jax.grad vs finite differences
    data      SVHN from tensorflow-datasets, .mat files, .npz files; splits
    train     jitted training, evaluation, checkpoints
"""

__version__ = "0.1.0"
