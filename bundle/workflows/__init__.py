"""What the workflow configs run besides MONAI's own components: the plan from the data
(``planning``), checks of the command line's settings (``settings``), one run per folder (``locks``),
checkpoints that are written atomically and resumed safely (``checkpoints``), ignite handlers
(``handlers``) and the whole-image / sliding-window inferer (``inferers``)."""
