"""Programs that use the library: ``jaxdeconv verify``, ``explain`` and ``bench``.

Nothing here is imported by ``import jaxdeconv`` or by any library call; the
``jaxdeconv`` command (:mod:`jaxdeconv.tools.cli`) loads a tool only when asked.
"""
