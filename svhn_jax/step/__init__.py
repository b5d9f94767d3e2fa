"""The compiled training step: what the program sees and where it runs.

    train        StepConfig (static), Hyper (traced), TrainState; the step in both
                 gradient modes, the per-step check inside it, whole epochs as one scan
    settings     a RunConfig as the step sees it: StepConfig, Hyper and the schedule
    parallel     the step data-parallel on a device mesh; several processes
    models_axis  K stacked models spread over devices
"""
