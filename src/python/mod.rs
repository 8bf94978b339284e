//! CPython knowledge: versions, layouts (tables and `_Py_DebugOffsets`), and the walk from the
//! runtime to interpreters, thread states and the GIL. It reads the target; it never classifies.

pub mod debug_offsets;
pub mod interpreter;
pub mod layout;
pub mod objects;
pub mod stack;
pub mod thread_names;
pub mod version;
