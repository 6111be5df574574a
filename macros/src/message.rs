//! `#[derive(Message)]`.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned, ToTokens};
use syn::spanned::Spanned;
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
    // wire an error, but rustc reports serde's bounds one by one, each with
    // a list of the types that implement them. The `where` clauses of
    // `__mesh_serializable`, emitted before the impl, are checked on the
    // definition (trivial bounds), reported first, on the message or the
    // reply type, and say what to derive.
    let reply_ty = reply.unwrap_or_else(|| syn::parse_quote!(()));
    let check_message = quote_spanned! {ident.span()=>
        #ident: ::mesh::__private::SerializableMessage
    };
    // The bound is spanned on the type's last token, so the predicate (and
    // the error) covers the whole type, `std::time::Instant` and not `std`.
    let last = reply_ty
        .to_token_stream()
        .into_iter()
        .last()
        .map_or_else(|| reply_ty.span(), |t| t.span());
    let check_reply = quote_spanned! {last=>
        #reply_ty: ::mesh::__private::SerializableReply
    };
    Ok(quote! {
        const _: () = {
            #[allow(dead_code)]
            fn __mesh_serializable()
            where
                #check_message,
                #check_reply,
            {
            }
        };

        #[automatically_derived]
        impl #p::Message for #ident {
            type Reply = #reply_ty;
            const NAME: &'static str = #name;
        }
    })
}
