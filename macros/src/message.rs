//! `#[derive(Message)]`.

use proc_macro2::TokenStream;
use quote::quote;
use syn::{DeriveInput, Ident, LitStr, Type};

use crate::attr;

struct MessageIr {
    ident: Ident,
    name: String,
    reply: Option<Type>,
}

pub(crate) fn expand(input: DeriveInput) -> syn::Result<TokenStream> {
    codegen(parse(input)?)
}

fn parse(input: DeriveInput) -> syn::Result<MessageIr> {
    if !input.generics.params.is_empty() {
        return Err(syn::Error::new_spanned(
            &input.generics,
            "mesh messages cannot be generic: one wire name must mean one type",
        ));
    }
    let mut reply = None;
    let mut name = None;
    for a in attr::find(&input.attrs, "message") {
        a.parse_nested_meta(|meta| {
            if meta.path.is_ident("reply") {
                reply = Some(meta.value()?.parse::<Type>()?);
            } else if meta.path.is_ident("name") {
                let lit: LitStr = meta.value()?.parse()?;
                if lit.value().is_empty() {
                    return Err(syn::Error::new(
                        lit.span(),
                        "message name must not be empty",
                    ));
                }
                name = Some(lit.value());
            } else {
                return Err(attr::unknown_key(&meta.path, "message", &["reply", "name"]));
            }
            Ok(())
        })?;
    }
    Ok(MessageIr {
        name: name.unwrap_or_else(|| input.ident.to_string()),
        ident: input.ident,
        reply,
    })
}

fn codegen(ir: MessageIr) -> syn::Result<TokenStream> {
    let MessageIr { ident, name, reply } = ir;
    let p = quote!(::mesh::__private);
    // `Message: Wire` and `Reply: Wire` make a type that cannot cross the
    // wire an error on the type itself, with the reason.
    let reply_ty = reply.unwrap_or_else(|| syn::parse_quote!(()));
    Ok(quote! {
        #[automatically_derived]
        impl #p::Message for #ident {
            type Reply = #reply_ty;
            const NAME: &'static str = #name;
        }
    })
}
