"""Alembic migrations, shipped in the package so ``tracker migrate`` works after install."""
