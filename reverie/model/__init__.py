"""The model layer: loading the base model, attaching and merging adapters, rendering prompts
and generating, shared by serving (``reverie.agent``) and training (``reverie.consolidator``).

It imports only ``reverie.memory``. Import the submodules (``base``, ``generate``, ``prompts``,
``config``); this package itself imports nothing heavy, so the client loads torch only when a model
is first needed.
"""
