//! keyward's leak scanner. Filled in by the scanner work (issue 4).
