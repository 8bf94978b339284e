//! Tools for gilscope's own tests and fuzzing, not for users: the exact uprobe reference the
//! accuracy tests compare with, and the fuzz targets' entry points.

pub mod fuzzing;
pub mod reference;
pub mod synthetic;
