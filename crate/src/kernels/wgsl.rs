//! Declarations shared between Rust and WGSL, written once, and the writer of generated straight-line WGSL.

/// Scalar types a uniform parameter struct may hold, with their WGSL names.
pub(crate) trait WgslScalar: bytemuck::Pod {
    const WGSL: &'static str;
}

impl WgslScalar for u32 {
    const WGSL: &'static str = "u32";
}

impl WgslScalar for i32 {
    const WGSL: &'static str = "i32";
}

impl WgslScalar for f32 {
    const WGSL: &'static str = "f32";
}

/// The WGSL text of `struct <name> { … }`: one field per line, each field's doc comment (if any) as a trailing
/// `//` comment aligned one space past the longest field.
pub(crate) fn struct_decl(name: &str, fields: &[(&str, &str, Option<&str>)]) -> String {
    let decl = |f: &(&str, &str, Option<&str>)| format!("{}: {},", f.0, f.1);
    let width = fields.iter().map(|f| decl(f).len()).max().unwrap_or(0);
    let mut s = format!("struct {name} {{\n");
    for f in fields {
        match f.2 {
            Some(doc) => s.push_str(&format!("    {:width$} // {}\n", decl(f), doc.trim())),
            None => s.push_str(&format!("    {}\n", decl(f))),
        }
    }
    s.push_str("}\n");
    s
}

/// The text of one `//== section: <name>` of a shader file (`file` names it in the panic), up to the next section.
/// Sections are how a kernel family assembles its modules from one file; a missing one is a bug in this crate.
pub(crate) fn section(source: &'static str, file: &str, name: &str) -> &'static str {
    let marker = format!("//== section: {name}\n");
    let start = source.find(&marker).unwrap_or_else(|| panic!("{file} has no section {name}")) + marker.len();
    let end = source[start..].find("//== section: ").map_or(source.len(), |e| start + e);
    &source[start..end]
}

/// Declares a kernel's uniform parameters once for both sides: the `#[repr(C)]` Pod Rust struct, and
/// `<Name>::wgsl()`, the WGSL declaration of the same struct (field order, names and types from the one list, so
/// the two cannot drift apart). Fields are 4-byte scalars (`u32`, `i32`, `f32`); a field's `///` doc comment
/// becomes its trailing comment in the WGSL.
macro_rules! wgsl_params {
    (
        $(#[doc = $doc:literal])*
        $vis:vis struct $name:ident {
            $( $(#[doc = $fdoc:literal])? $field:ident : $ty:ident ),* $(,)?
        }
    ) => {
        $(#[doc = $doc])*
        #[repr(C)]
        #[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
        $vis struct $name {
            $( $(#[doc = $fdoc])? pub $field: $ty ),*
        }

        impl $name {
            /// The WGSL declaration of this struct.
            pub fn wgsl() -> String {
                $crate::kernels::wgsl::struct_decl(
                    stringify!($name),
                    &[$( (stringify!($field), <$ty as $crate::kernels::wgsl::WgslScalar>::WGSL, None$(.or(Some($fdoc)))?) ),*],
                )
            }
        }
    };
}

/// Generated straight-line WGSL, written a line at a time at the current depth (4 spaces a level): `block` opens
/// `header {`, writes its body one level deeper and closes it, so no generator counts spaces or braces.
pub(crate) struct Emitter {
    text: String,
    depth: usize,
}

impl Emitter {
    /// Empty, its lines `depth` levels deep (where the code lands in its shader).
    pub(crate) fn new(depth: usize) -> Emitter {
        Emitter { text: String::new(), depth }
    }

    /// One line at the current depth.
    pub(crate) fn line(&mut self, line: &str) {
        for _ in 0..self.depth {
            self.text.push_str("    ");
        }
        self.text.push_str(line);
        self.text.push('\n');
    }

    /// `header {` (a bare `{` for an empty header), then `body` one level deeper, then `}`.
    pub(crate) fn block(&mut self, header: &str, body: impl FnOnce(&mut Emitter)) {
        self.line(&if header.is_empty() { "{".to_string() } else { format!("{header} {{") });
        self.depth += 1;
        body(self);
        self.depth -= 1;
        self.line("}");
    }

    /// What was written: lines ending in a newline.
    pub(crate) fn finish(self) -> String {
        self.text
    }
}

/// `Emitter::line` of a `format!` text: `emit!(e, "let x_{i} = load({i}u);")`.
macro_rules! emit {
    ($e:expr, $($fmt:tt)*) => {
        $e.line(&format!($($fmt)*))
    };
}

/// `a + b + …` as a balanced tree of WGSL additions (independent loads, short dependency chains) for the
/// generated straight-line kernel code.
pub(crate) fn tree_sum(terms: &[String]) -> String {
    match terms.len() {
        0 => "0.0".into(),
        1 => terms[0].clone(),
        n => format!("({} + {})", tree_sum(&terms[..n / 2]), tree_sum(&terms[n / 2..])),
    }
}

#[cfg(test)]
mod tests {
    wgsl_params! {
        /// A test struct.
        struct Example {
            /// first
            a: u32,
            long_name: f32,
            /// third, with a longer comment
            c: i32,
        }
    }

    #[test]
    fn one_declaration_gives_both_structs() {
        assert_eq!(std::mem::size_of::<Example>(), 12);
        let bytes = bytemuck::bytes_of(&Example { a: 1, long_name: 2.0, c: -3 }).to_vec();
        assert_eq!(bytes[8..12], (-3i32).to_le_bytes());
        assert_eq!(Example::wgsl(), "struct Example {\n    a: u32,         // first\n    long_name: f32,\n    c: i32,         // third, with a longer comment\n}\n");
    }

    #[test]
    fn emitter_indents_blocks() {
        let mut e = super::Emitter::new(1);
        e.line("let a = 1u;");
        e.block("if a > 0u", |e| {
            emit!(e, "let b_{} = a;", 2);
            e.block("for (var i = 0u; i < 2u; i++)", |e| e.line("b_2 += i;"));
        });
        e.block("", |e| e.line("let c = a;"));
        assert_eq!(
            e.finish(),
            "    let a = 1u;\n    if a > 0u {\n        let b_2 = a;\n        for (var i = 0u; i < 2u; i++) {\n            b_2 += i;\n        }\n    }\n    {\n        let c = a;\n    }\n"
        );
    }

    #[test]
    fn tree_sum_balances() {
        let terms: Vec<String> = ["a", "b", "c"].iter().map(|t| t.to_string()).collect();
        assert_eq!(super::tree_sum(&terms), "(a + (b + c))");
        assert_eq!(super::tree_sum(&terms[..1]), "a");
        assert_eq!(super::tree_sum(&[]), "0.0");
    }
}
