"""Parts several methods share (no method of its own): fixed prompt ensembles and their text
features (:mod:`.prompts`), AnomalyCLIP's scoring and glocal loss with the base class of every
method scored that way (:mod:`.glocal`), the CLIP baselines (:mod:`.clip_baseline`), the trainer of
small parts on frozen image features (:mod:`.training`), and the shared settings (:mod:`.config`,
no torch)."""
