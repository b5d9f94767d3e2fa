"""The compiled training step: what the program sees and where it runs.

    train        StepConfig (static), Hyper (traced), TrainState; the step in both
                 gradient modes, the per-step check inside it, whole epochs as one scan
    settings     a RunConfig as the step sees it: StepConfig, Hyper and the schedule
    mesh         where K models and their data sit: a mesh with `models` and `data` axes
    parallel     the one compiled segment: K models (vmapped) on a placement, each
                 model's batch split along `data` (the hand backward in shard_map)
    evaluate     loss and accuracy of one model, K models, or an ensemble
"""
