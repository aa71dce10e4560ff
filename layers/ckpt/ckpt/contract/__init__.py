"""The contract's rules, as pure code: the key layout, the manifest, which epoch is best and what a
promotion must do given the recorded state, and the outcomes a manifest ends in. No storage, no database."""
