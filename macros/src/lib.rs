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
#[proc_macro_derive(Actor, attributes(actor))]
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
