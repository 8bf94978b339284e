//! CPython knowledge: versions, layouts (tables and `_Py_DebugOffsets`), and the walk from the
//! runtime to interpreters, thread states and the GIL. It reads the target; it never classifies.

pub(crate) mod debug_offsets;
pub(crate) mod discovery;
pub(crate) mod frame_copy;
pub mod interpreter;
pub(crate) mod layout;
pub(crate) mod locals;
pub(crate) mod objects;
pub(crate) mod stack;
pub mod thread_names;
pub(crate) mod values;
pub(crate) mod version;

#[cfg(test)]
mod tests {
    use super::version::{Version, SUPPORTED, VERIFIED};
    use super::{layout, thread_names};

    /// Adding a version means extending every table docs/ADDING_A_VERSION.md names; this
    /// fails for the one forgotten.
    #[test]
    fn every_verified_version_has_every_table() {
        for &(major, minor) in VERIFIED {
            let version = Version::new(major, minor, 0);
            // 3.13 and later describe themselves through _Py_DebugOffsets.
            let self_described = version.at_least(3, 13);
            assert!(
                layout::table_for(&version).is_some() || self_described,
                "{major}.{minor}: no layout table (layout.rs table_for)"
            );
            assert!(
                layout::stack_table(major, minor).is_some() || self_described,
                "{major}.{minor}: no stack layout (layout.rs stack_table)"
            );
            // 2.7's threads carry no Python names gilscope reads.
            if version.at_least(3, 0) {
                assert!(
                    thread_names::object_layout(&version, false).is_some(),
                    "{major}.{minor}: no object layout for thread names (thread_names.rs)"
                );
            }
        }
    }

    #[test]
    fn the_supported_text_names_the_verified_versions() {
        let (old, threes): (Vec<_>, Vec<_>) = VERIFIED.iter().partition(|(major, _)| *major == 2);
        let minors: Vec<u8> = threes.iter().map(|&&(_, minor)| minor).collect();
        assert!(minors.windows(2).all(|w| w[1] == w[0] + 1), "a gap in 3.x");
        let text = format!(
            "{}.{} and 3.{}-3.{}",
            old[0].0,
            old[0].1,
            minors[0],
            minors[minors.len() - 1]
        );
        assert_eq!(SUPPORTED, text);
    }
}
