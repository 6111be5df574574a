//! Procedural macros for `mesh`: `#[derive(Actor)]`, `#[derive(Message)]`
//! and `#[mesh::handlers]`. Use them through the `mesh` crate, which
//! documents them; each is parse → IR → codegen, with errors spanned on the
//! offending tokens.

use proc_macro::TokenStream;

mod actor;
mod attr;
mod handlers;
mod message;

/// See `mesh::Actor`.
#[proc_macro_derive(Actor, attributes(actor, state))]
pub fn derive_actor(input: TokenStream) -> TokenStream {
    let input = syn::parse_macro_input!(input as syn::DeriveInput);
    actor::expand(input)
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

/// See `mesh::Message`.
#[proc_macro_derive(Message, attributes(message))]
pub fn derive_message(input: TokenStream) -> TokenStream {
    let input = syn::parse_macro_input!(input as syn::DeriveInput);
    message::expand(input)
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

/// See `mesh::handlers`.
#[proc_macro_attribute]
pub fn handlers(args: TokenStream, input: TokenStream) -> TokenStream {
    let args = proc_macro2::TokenStream::from(args);
    let input = syn::parse_macro_input!(input as syn::ItemImpl);
    handlers::expand(args, input)
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

/// mesh's own: `#[cfg_attr(feature = "internals", mesh_macros::expose)]`
/// on a `pub(crate)` item (a `use`, a type, a function, a method) makes it
/// `pub`. The library marks its engine parts this way: crate-private for
/// users, public to its own tests and benchmarks, which turn on the
/// hidden, unstable feature `internals`. Not for use outside mesh.
#[doc(hidden)]
#[proc_macro_attribute]
pub fn expose(args: TokenStream, input: TokenStream) -> TokenStream {
    use proc_macro2::{Delimiter, TokenTree};
    if !args.is_empty() {
        return syn::Error::new(
            proc_macro2::Span::call_site(),
            "#[expose] takes no arguments",
        )
        .into_compile_error()
        .into();
    }
    let mut out = Vec::new();
    let mut tokens = proc_macro2::TokenStream::from(input).into_iter().peekable();
    let mut done = false;
    while let Some(t) = tokens.next() {
        match (&t, done) {
            // Outer attributes (`#` then `[..]`) pass through untouched.
            (TokenTree::Punct(p), false) if p.as_char() == '#' => out.push(t),
            (TokenTree::Group(g), false) if g.delimiter() == Delimiter::Bracket => out.push(t),
            (TokenTree::Ident(i), false) if i == "pub" => {
                out.push(t);
                // `pub(crate)` becomes `pub`.
                if matches!(tokens.peek(), Some(TokenTree::Group(g)) if g.delimiter() == Delimiter::Parenthesis)
                {
                    tokens.next();
                }
                done = true;
            }
            _ => {
                out.push(t);
                done = true;
            }
        }
    }
    out.into_iter().collect::<proc_macro2::TokenStream>().into()
}
