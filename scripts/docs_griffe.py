"""A griffe extension (mkdocs.yml, mkdocstrings ``extensions``): the service's served methods.

``EncryptionService`` attaches each public method of its role objects as a descriptor,
``encrypt = _Served("_envelope", Envelope.encrypt)`` (service.py): static analysis sees an
attribute, not a method. This extension replaces each such attribute, once the package is
loaded, with a copy of the role's method (its signature and docstring), so the reference shows
the methods a caller calls without importing the package (importing runs its ``__main__``
modules under inspection).
"""

from __future__ import annotations

import ast
from typing import Any

import griffe

_SERVICE = "service.EncryptionService"


class ServedMethods(griffe.Extension):
    """Turns ``_Served(role, Role.method)`` attributes into methods."""

    def on_package(self, *, pkg: griffe.Module, **_: Any) -> None:
        """Rewrites the service class of the ``greenlang_crypto`` package when it is loaded."""
        if pkg.name != "greenlang_crypto":
            return
        service = pkg[_SERVICE]
        module = service.module
        for name, member in list(service.members.items()):
            if member.is_alias or not member.is_attribute or member.value is None:
                continue
            source = str(member.value)
            if not source.startswith("_Served("):
                continue
            call = ast.parse(source, mode="eval").body
            assert isinstance(call, ast.Call) and isinstance(call.args[1], ast.Attribute)
            role = call.args[1]
            assert isinstance(role.value, ast.Name)
            role_path = module[role.value.id].target_path  # the import the module made
            function = pkg.modules_collection[f"{role_path}.{role.attr}"]
            copy = griffe.Function(
                name,
                # Where the service declares it: the reference lists the methods in that order.
                lineno=member.lineno,
                endlineno=member.endlineno,
                parameters=function.parameters,
                returns=function.returns,
                decorators=function.decorators,
                docstring=function.docstring,
                parent=service,
            )
            copy.labels |= function.labels
            service.set_member(name, copy)
