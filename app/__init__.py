"""The composition root: where the parts of arcadia-sagas are built and wired together.

``wiring`` builds the ledger, the catalog of kinds, the services and the runner from settings;
``cli`` is the ``sagas`` command (thin: parse, build, call the code the flows call); ``demo`` is
the seed's smoke replayed against a simulator; ``running`` runs a kind's Prefect flow in this
process, against the API ``prefect_server`` provides (with none configured, a temporary server
that dies with the process: ``server_child``). Everything below (``flows/``, ``tasks/``,
``sagas/``) is built here and never looks up: ``sagas/`` must not import this package
(``tests/test_architecture.py`` keeps that wall).
"""
