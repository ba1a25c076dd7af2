"""Perceptual realism study: the paper's real-vs-fake two-alternative forced choice.

Zhang, Isola, Efros (2016, section 3.1) showed people a real photo beside a recolorized
version of it for one second and asked which one was fake; the full method fooled them
on 32% of trials (50% = indistinguishable from real). This package runs that test
locally, with no crowdsourcing account:

- ``design.py``  ``colorbench study create``: pairs, sanity pairs, manifest, per-rater plans
- ``store.py``   the SQLite answer store (WAL; one row per judgement)
- ``app.py``     ``colorbench study serve``: the Flask app (served by waitress)
- ``report.py``  ``colorbench study report``: labelled-real % per method, run records
- ``cli.py``     the ``colorbench study`` subcommands
"""


class StudyError(ValueError):
    """Bad input to a study command; the CLI prints the message as one line and exits 2."""
